from django.db import migrations


def fill_style(apps, schema_editor):
    Recipe = apps.get_model("recoveryapp", "Recipe")
    Recipe.objects.using(schema_editor.connection.alias).filter(style="").update(style="ale")


class Migration(migrations.Migration):
    dependencies = [("recoveryapp", "0002_recipe_style")]

    operations = [migrations.RunPython(fill_style, migrations.RunPython.noop)]
