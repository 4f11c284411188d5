"""Cache backends for web frameworks, over :class:`~pitchey_cache.SyncCache`.

- ``pitchey_cache.contrib.django.PitcheyCache``: a Django cache backend
  (``pip install pitchey-cache[django]``);
- ``pitchey_cache.contrib.flask.PitcheyCache``: a cachelib cache for Flask-Caching
  (``pip install pitchey-cache[flask]``).

Both serve from the same failover machinery as :class:`~pitchey_cache.Cache`,
configured from the same environment variables.
"""
