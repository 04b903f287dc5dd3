"""Access control and spend governance: keys, budgets ($ and J), rate limits; who may do what."""
