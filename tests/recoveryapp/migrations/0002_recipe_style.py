from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("recoveryapp", "0001_initial")]

    operations = [
        migrations.AddField(model_name="recipe", name="style", field=models.CharField(default="", max_length=50))
    ]
