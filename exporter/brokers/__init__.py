"""The broker layer: everything that talks to a broker, one package per broker.

* ``registry.py``: URL scheme -> broker package (``redis/``, ``rabbitmq/``, ``kombu/``), each holding
  its connection builder, event stream, poller and pure parts;
* ``settings.py``: the settings slices (``StreamSettings``, ``PollSettings``) ``exporter.config`` builds
  from ``Config``, and ``BrokerSettingsError``;
* ``supervisor.py`` + ``backoff.py``: the reconnect loop every event stream runs in;
* ``polling.py`` + ``scheduler.py`` + ``model.py``: the background polling, its deadlines and the rules
  every poller shares; the ``PollResult`` each produces is declared in the leaf ``exporter.status``.

Nothing here imports ``exporter.config``; decoding what a stream reads is ``exporter.events``.
"""
