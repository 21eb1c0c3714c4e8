"""HTTP surface, one blueprint per area: openai, jobs, ws, admin, health."""
