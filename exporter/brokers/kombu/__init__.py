"""The generic fallback for every kombu transport without a package of its own (SQS, Azure Service Bus,
ZooKeeper, ``memory://``, ``filesystem://``...): ``stream.py`` reads events with Celery's own
``EventReceiver``. There is no poller: kombu offers no transport-independent way to count a queue.
"""
