"""The modules of the run protocol, one job each; :mod:`p8utils.runs` is their public face.

Modules
-------
folders      the folder layout (:class:`~p8utils.protocol.folders.RunLayout`, with its store), run discovery,
             the manifest read back, the committed tables read
lease        the lease (:class:`~p8utils.protocol.lease.LeaseHolder`, taking it over, refreshing it)
commit       staging, commit and recovery (:func:`~p8utils.protocol.commit.open_run`, ``ActiveRun``, the vacuum)
rowcheck     the row check (:class:`~p8utils.protocol.rowcheck.RowCheck`)
incremental  what a run does with the committed table (:class:`~p8utils.protocol.incremental.IncrementalPlan`)
manifest     the manifest from typed values (``RunOutcome``, ``build_manifest``)

Not named ``p8utils/runs/``: ``runs/`` is where run folders go (ignored by git and by the build's copies).
"""
