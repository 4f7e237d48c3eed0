"""`athanor top`: a Textual dashboard for the daemon and the machine it runs on.

`metrics` and `panels` are pure; `source` reads the daemon, `hardware` this machine; `app` ties them to widgets.
"""
