"""The test app's models at its newest migration (0004)."""

from django.db import models


class Brewery(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self):
        return self.name


class Ingredient(models.Model):
    name = models.CharField(max_length=100)

    def __str__(self):
        return self.name


class Recipe(models.Model):
    name = models.CharField(max_length=100)
    brewery = models.ForeignKey(Brewery, on_delete=models.CASCADE, related_name="recipes")
    ingredients = models.ManyToManyField(Ingredient, blank=True)
    style = models.CharField(max_length=50, default="")  # 0002, filled by 0003

    def __str__(self):
        return self.name


class Tasting(models.Model):  # 0004
    recipe = models.ForeignKey(Recipe, on_delete=models.CASCADE, related_name="tastings")
    note = models.CharField(max_length=200)

    def __str__(self):
        return self.note
