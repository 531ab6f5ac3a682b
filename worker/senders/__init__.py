"""One sender module per platform behind one interface (``base.Sender``)."""
