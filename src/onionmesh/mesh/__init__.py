"""The sans-IO coordination core: messages, membership, election and the publish plan."""
