"""event-metrics: product-analytics event ingestion and exact metrics."""

__version__ = "0.1.0"
