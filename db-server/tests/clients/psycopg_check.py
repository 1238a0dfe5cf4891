"""psycopg 3 against db-server: what a Python application does. Argument: a conninfo string.
Prints OK at the end; any failure raises (non-zero exit)."""
import sys

import psycopg

conninfo = sys.argv[1]
with psycopg.connect(conninfo) as conn:
    assert conn.info.server_version >= 150000, conn.info.server_version
    # The ParameterStatus set drivers rely on, as sent at startup.
    status = conn.info.parameter_status
    assert status("server_version").startswith("15."), status("server_version")
    assert status("server_encoding") == "UTF8", status("server_encoding")
    assert status("client_encoding") == "UTF8", status("client_encoding")
    assert status("DateStyle").startswith("ISO"), status("DateStyle")
    assert status("TimeZone"), status("TimeZone")
    assert status("integer_datetimes") == "on", status("integer_datetimes")
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, stock INTEGER)")
        # Server-side parameters, typed by psycopg (int, str, float).
        cur.executemany(
            "INSERT INTO items (name, price, stock) VALUES (%s, %s, %s)",
            [("pen", 1.5, 10), ("ink", 4.25, 0), ("pad", 3.0, 7)],
        )
        cur.execute("SELECT id, name, price, stock FROM items WHERE stock > %s ORDER BY id", (5,))
        rows = cur.fetchall()
        assert rows == [(1, "pen", 1.5, 10), (3, "pad", 3.0, 7)], rows
        cur.execute("SELECT count(*) FROM items")
        assert cur.fetchone() == (3,)
    conn.commit()

    # A failed statement aborts the transaction until rollback, with the right SQLSTATE.
    with conn.cursor() as cur:
        try:
            cur.execute("INSERT INTO items (id, name) VALUES (1, 'dup')")
            raise AssertionError("duplicate key accepted")
        except psycopg.errors.UniqueViolation:
            pass
        try:
            cur.execute("SELECT 1")
            raise AssertionError("statement ran in a failed transaction")
        except psycopg.errors.InFailedSqlTransaction:
            pass
    conn.rollback()
    with conn.cursor() as cur:
        cur.execute("SELECT name FROM items WHERE id = %s", (2,))
        assert cur.fetchone() == ("ink",)
        try:
            cur.execute("SELECT * FROM missing")
        except psycopg.errors.UndefinedTable:
            conn.rollback()
print("OK")
