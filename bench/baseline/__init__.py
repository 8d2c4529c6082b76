"""The stack's own limit: Daphne + Django serving one view that returns a constant JSON body
(no database, no middleware, no DRF), for `bench/run.py` to compare the chat endpoint against."""
