"""SQL migrations (`NNNN_name.sql`), applied by `event_store.migrate`.

A package only so that the `.sql` files ship as package data.
"""
