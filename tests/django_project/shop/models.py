from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)


class Run(models.Model):
    """One run of a task, as the task itself records it."""

    label = models.CharField(max_length=100)
