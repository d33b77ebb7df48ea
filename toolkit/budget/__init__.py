"""The lab's budget: what a budget period has spent (`lab cost`'s arithmetic over the period), the hours since the
last `lab up`, the decision (ok, warn at 80%, stop), and the guard that acts on it.

  spend.py    the arithmetic and the decision (`Limits`, `Ledger`, `decide`)
  ledger.py   where a period starts and what the guard did, kept beside the stack's uptime (budget.json)
  guard.py    the guard's loop and what it does when the lab must stop, for each place it runs
"""
