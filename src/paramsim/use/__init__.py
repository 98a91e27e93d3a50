"""Using the similarity: task-relation maps, source selection for transfer, the one-command
report."""
