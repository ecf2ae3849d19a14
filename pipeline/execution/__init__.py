"""Execution on Ray: the driver (plan, resume, dispatch, commit), the actor pool and the workers it
starts mid-run, the engine actor, narrowing a failing shard, the cluster connection, a finished
output's rerun, warm actors, the model copied to every node, the in-process engine for small
inputs, the Ray Data `Embedder`. May import inputs/ and output/.
"""
