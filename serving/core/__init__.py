"""The serving core: job store, accounts, plans, API keys, pricing, reservation and settlement.

Routes and the dispatcher call these functions; they never touch the tables' money or status
columns themselves. `jobs` is the only module that changes a generation's `status`.
"""
