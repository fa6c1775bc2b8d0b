"""A real moto server over HTTP on 127.0.0.1, as a separate process (see keymigration.demo.standins).

Integration tests talk to it exactly as the worker talks to AWS: through boto3 with an
endpoint URL. Workers started by tests are separate processes and reach the same server.
"""
from keymigration.demo.standins import FAKE_CREDENTIALS, REGION, MotoServer, free_port

__all__ = ["FAKE_CREDENTIALS", "REGION", "MotoServer", "free_port"]
