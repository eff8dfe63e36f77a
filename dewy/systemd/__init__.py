"""The systemd adapters: dewy run as a systemd service (:mod:`dewy.systemd.service`), the sd_notify protocol and
fd store (:mod:`dewy.systemd.sdnotify`), transient scopes over D-Bus (:mod:`dewy.systemd.units`) and the journal
(:mod:`dewy.systemd.journal`). Outside systemd none of them is imported (:mod:`dewy.host`)."""
