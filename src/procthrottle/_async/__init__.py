"""Layer 2: awaiting kernel permits from asyncio and trio without blocking the loop."""
