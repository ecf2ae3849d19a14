"""The output side: a part's schema and encodings (writer), the output folder that owns every file,
the manifest, output precisions (quantize), the part-size bound, run statistics with the live progress bar, and the finish step (summary,
reported rows). May import inputs/ (the shard plan) but not execution/.
"""
