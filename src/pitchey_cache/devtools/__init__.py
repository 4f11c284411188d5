"""Developer tools: local Redis servers and fault injection for tests, benchmarks and demos."""
