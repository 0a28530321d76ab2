"""The staff API: accounts, sessions and the handlers' and admins' view of sealed cases."""
