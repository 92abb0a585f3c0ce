"""Support shared by the tests and the benchmarks (bench/ imports it as tests.support): the live server,
an SSE client, the chats the tests make, and the local web that stands in for the internet."""
