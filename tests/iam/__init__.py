"""Policy evaluation for the tests: a pinned IAM evaluator (npm) and the documents it checks."""
