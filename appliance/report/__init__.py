"""`athanor report`: money spent and saved and the quality kept, read from the daemon's files."""
