"""The web dashboard (`liteq dashboard`): an optional extra, never imported by the core.

pip install 'liteq-jobs[dashboard]'
"""

from liteq.web.app import create_app

__all__ = ["create_app"]
