"""Failover machinery: breakers, the invalidation journal, the router, health checks."""
