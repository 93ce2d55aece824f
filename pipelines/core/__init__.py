"""The bottom of the package: settings, the Spark session, config loading, the event
contract, the table specs and names (`tables`), Kafka clients, auth and topics, secret
scopes, exact-decimal JSON and the job context. Imports nothing else of the package."""
