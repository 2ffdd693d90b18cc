"""The state port over Stateport's HTTP API (httpx): ``RestStateStore`` and the Execution API task client."""
