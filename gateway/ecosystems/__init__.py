"""One module per ecosystem: its catalogue rows, path rules and what only it knows.
``catalogue`` assembles the rows."""

# Ten minutes keeps builds fast while letting a new upload show up within one coffee;
# indexes of immutable artifacts change only by addition, so stale-by-minutes is harmless.
INDEX_TTL = 600
