"""The example's pages, shaped like examples/gunicorn/app/app.py so the same probes
read them:

  GET  /         200 "hello from <VERSION> pid <pid> ppid <master pid> dir <release dir>
                 notes <count> latest <text>"
  POST /notes/   the same answer, after saving a note from the form field `text`
  GET  /healthz  200 "ok" (no database: only says this process answers)

A deploy edits VERSION to prove which code answers. Both pages go through the Note
model, so they fail loudly (500) when the code and the database schema disagree: a
column the code selects but the migration has not added yet, or one the old code
never fills in but the database requires.
"""

import os

from django.http import HttpResponse, HttpResponseNotAllowed
from django.views.decorators.csrf import csrf_exempt

from .models import Note

VERSION = "v1"

# where this code was loaded from: releases/<sha>, even when reached through
# `current` (resolved once, at import)
RELEASE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _hello():
    # .first() selects every column of the model: the schema check above
    latest = Note.objects.order_by("-id").first()
    text = (
        f"hello from {VERSION} pid {os.getpid()} ppid {os.getppid()} "
        f"dir {RELEASE_DIR} notes {Note.objects.count()} "
        f"latest {latest.text if latest else '-'}\n"
    )
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    response["X-App-Version"] = VERSION
    response["X-Master-Pid"] = str(os.getppid())
    return response


def index(request):
    return _hello()


@csrf_exempt  # a demo endpoint for probes; a real form keeps CSRF protection
def add_note(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    Note.objects.create(text=request.POST.get("text", "")[:200] or "-")
    return _hello()


def healthz(request):
    return HttpResponse("ok\n", content_type="text/plain")
