"""Pure decoding and ingest of Celery events: ``decode.py`` turns raw broker messages (bytes) into
validated event dicts, ``ingest.py`` applies decoded batches to ``ClusterState`` (the stream's
``StreamStatus`` lives in the leaf ``exporter.status``). No broker I/O and no configuration here: the
readers that fetch the bytes live in the broker packages under ``exporter/brokers/``.
"""
