"""The job kinds. Each module holds one kind: definition, context, handler and client."""
