"""Key custody: the restore secrets of each embassy in a sealed bundle in its own vault, the key split among officials."""
