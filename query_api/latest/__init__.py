"""``latest``: each charger's newest reading, from the live mirror when that is provably current,
else from InfluxDB (newest wins).

snapshot.py   a charger's newest reading from a live message or an InfluxDB row (pure)
mirror.py     in-memory mirror of the live feed and gateway states (pure)
trust.py      the trust rule: when the mirror alone may answer (pure)
read.py       ``get_latest``: the mirror when trusted, else InfluxDB, newer wins
stored.py     the newest stored readings of mirror misses, asked of InfluxDB in batches
document.py   the ``latest`` answer as a document (pure)
state.py      online / stale / offline (pure)
index.py      the charger index (newest stored point per charger) behind the charger list
sweep.py      the bulk confirmation of the mirror from the charger index
"""
