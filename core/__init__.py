"""The ground floor: what every other package shares (machine identity, and in time errors,
atomic writes, the console and the artifact layout). It imports no other qdeploy package."""
