"""The service: runs the state machine over the store, the router and the transport."""
