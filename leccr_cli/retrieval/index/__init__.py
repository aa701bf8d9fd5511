"""The index folder (`leccr index`) that search and the app query."""
