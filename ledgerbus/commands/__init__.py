"""``ledgerbus`` subcommands beyond the core ones in ``ledgerbus.cli``, one module per area."""
