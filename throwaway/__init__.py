"""Throwaway database servers for the tests and the benchmarks: a ClickHouse server and a
PostgreSQL cluster, each a child process in a folder of its own."""
