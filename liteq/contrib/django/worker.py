"""What each worker of `manage.py liteq_work` imports after fork (`liteq work --import`):
Django set up in that process (settings, the app registry; database connections open on
first use, in this process only), and the `tasks` modules of the installed apps imported,
so that their tasks' job types are known. Other modules: `--import MODULE`."""

from __future__ import annotations

import django
from django.utils.module_loading import autodiscover_modules

django.setup()
autodiscover_modules("tasks")
