"""Tools that talk to a running daemon as clients do: export and import of JSON
Lines (``transfer``), and import of TableRound's file store (``legacy``)."""
