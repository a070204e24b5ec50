"""Live audit feeds: the store's rows as JSON records, sent to webhooks and syslog.

records.py   an export row as a JSON record (JSON-valued columns as real JSON)
sinks.py     where a batch goes: a signed webhook POST, RFC 5424 syslog (TCP/UDP)
runner.py    one thread per feed: read after the cursor, send, advance, back off
"""
