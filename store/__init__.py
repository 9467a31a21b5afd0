"""The database schema, its migrations, the CRUD functions and the artifact files (spec platform.md "store/")."""
