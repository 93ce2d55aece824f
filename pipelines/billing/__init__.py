"""Billing: the pricing catalog and the pricing engine that turns usage into amounts."""
