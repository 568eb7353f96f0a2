"""armcpu's node agent. Nothing is implemented here yet; see the open issues."""
