"""The input side of a run: sources (what the driver may know about a corpus without reading it,
and how an actor reads rows; Parquet files are opened with few object-store requests), the
checks that name a bad file or column, the shard plan, the row and model checks run before Ray
starts, and the bundled sample corpus. Imports only the pipeline's top-level modules (config,
errors, fs, redact) and `workers`' public names.
"""
