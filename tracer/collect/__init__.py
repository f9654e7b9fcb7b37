"""Hooks while the clip runs, and nothing else: the collector, what it collected, memory sources, the optimizer watch, sharding facts. Imports nothing that reads what it collects."""
