"""Usage-billing lakehouse: Kafka -> Delta bronze/silver/gold, billed exactly once."""

__version__ = "0.1.0"
